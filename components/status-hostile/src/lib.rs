//! A hostile status API for the tests: by the last segment of the path,
//! `loop` never returns, `memory` allocates until refused, `panic` traps;
//! anything else answers `200 hostile`. The host must answer 503/500 for
//! the first three, on time, and carry on.

use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(req: Request) -> Response {
    match req.path().rsplit('/').next().unwrap_or("") {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "panic" => panic!("hostile status component panics on purpose"),
        _ => Response::builder().status(200).body("hostile").build(),
    }
}
