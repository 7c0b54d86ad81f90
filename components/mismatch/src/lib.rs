//! A component that exports `mailwit:policy/route@0.2.0` with the wrong
//! type, for the test that a deploy refuses it and the running version stays.

wit_bindgen::generate!({ path: "wit", world: "mismatch" });

struct Mismatch;

impl exports::mailwit::policy::route::Guest for Mismatch {
    fn route(x: u32) -> u32 {
        x + 1
    }
}

export!(Mismatch);
