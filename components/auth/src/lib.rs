//! Reference authenticator.
//!
//! Rules read:
//! - `users.<login>`: argon2 PHC hash of the login's password (checked by
//!   the host; the hash never enters this component);
//! - `api-keys.<key-id>`: hash of an API key, for the Infobip-style login
//!   `App` with the API key as the password. A key is `<key-id>.<secret>`;
//! - `network.allowed`: CIDRs the client address must be in, when any
//!   (IBM's context-based restrictions);
//! - `network.default`: `"deny"` refuses every client address until a range
//!   is listed (IBM's default for a new instance); otherwise, with no list,
//!   any address may log in.
//!
//! Replies: `535 5.7.8` for any unknown login or wrong secret (alike), and
//! `535 5.7.1` for a client address outside the allowed networks.

wit_bindgen::generate!({ path: "../../wit", world: "authenticator" });

mod check;

use exports::mailwit::policy::authenticate::Guest;
use mailwit::policy::types::{ClientInfo, Mechanism, Reply};

struct Auth;

impl Guest for Auth {
    fn authenticate(
        client: ClientInfo,
        _tenant: String,
        _mechanism: Mechanism,
        login: String,
        secret: String,
    ) -> Result<String, Reply> {
        check::authenticate(&client, login, &secret)
    }
}

export!(Auth);
