//! An in-memory stand-in for Spin's `fermyon:spin/key-value@2.0.0` and
//! `fermyon:spin/variables@2.0.0`, filled from the environment: the store
//! `default` holds every environment variable (name = key, value = value),
//! and a variable `x` is the environment variable `SPIN_VARIABLE_X`.
//!
//! Composed with `components/status` (`wac plug`), it lets a runtime that
//! offers neither interface run the status component unchanged:
//! `wasmtime serve -S cli --env 'demo/users/demo=<hash>' composed.wasm`.
//! Read-only, like mailwit's own store.

wit_bindgen::generate!({ path: "../../wit/deps/fermyon-spin-2.0.0", world: "provider" });

use exports::fermyon::spin::key_value::{self as kv, GuestStore};
use exports::fermyon::spin::variables;

struct Provider;

/// The store `default`, backed by the environment.
struct EnvStore;

impl kv::Guest for Provider {
    type Store = EnvStore;
}

impl GuestStore for EnvStore {
    fn open(label: String) -> Result<kv::Store, kv::Error> {
        if label == "default" {
            Ok(kv::Store::new(EnvStore))
        } else {
            Err(kv::Error::NoSuchStore)
        }
    }

    fn get(&self, key: String) -> Result<Option<Vec<u8>>, kv::Error> {
        Ok(std::env::var_os(&key).map(|v| v.into_encoded_bytes()))
    }

    fn set(&self, _key: String, _value: Vec<u8>) -> Result<(), kv::Error> {
        Err(kv::Error::AccessDenied)
    }

    fn delete(&self, _key: String) -> Result<(), kv::Error> {
        Err(kv::Error::AccessDenied)
    }

    fn exists(&self, key: String) -> Result<bool, kv::Error> {
        Ok(std::env::var_os(&key).is_some())
    }

    fn get_keys(&self) -> Result<Vec<String>, kv::Error> {
        Ok(std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect())
    }
}

impl variables::Guest for Provider {
    fn get(name: String) -> Result<String, variables::Error> {
        std::env::var(format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase()))
            .map_err(|_| variables::Error::Undefined(name))
    }
}

export!(Provider);
