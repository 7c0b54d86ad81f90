//! A router built against the retired 0.1.0 contract (see `wit/world.wit`).

wit_bindgen::generate!({ path: "wit", world: "contract-v0" });

struct Old;

impl exports::mailwit::policy::route::Guest for Old {
    fn route(recipient: String) -> String {
        mailwit::policy::host::rule("route.default").unwrap_or(recipient)
    }
}

export!(Old);
