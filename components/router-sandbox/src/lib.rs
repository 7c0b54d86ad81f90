//! A replacement router that a tenant can deploy in place of the stock one:
//! every message goes to the sandbox (a staging account, say).

wit_bindgen::generate!({ path: "../../wit", world: "router" });

use exports::mailwit::policy::route::Guest;
use mailwit::policy::types::{Destination, Envelope, Metadata, Reply};

struct SandboxRouter;

impl Guest for SandboxRouter {
    fn route(_envelope: Envelope, _metadata: Vec<Metadata>) -> Result<Destination, Reply> {
        Ok(Destination::Sandbox)
    }
}

export!(SandboxRouter);
