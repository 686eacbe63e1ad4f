//! The SDK's runnable example: adds `x-hello: <greeting>` to every request and answers
//! `GET /hello` itself.
//!
//! ```sh
//! cargo build -p portico-plugin-sdk --example hello --target wasm32-wasip1 --release
//! # → target/wasm32-wasip1/release/examples/hello.wasm
//! ```
#![forbid(unsafe_code)]

use portico_plugin_sdk::{Flow, Http, LocalResponse, Plugin, Result, Root, info, plugin};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_greeting() -> String {
    "hello".into()
}

struct Hello {
    greeting: String,
}

#[plugin]
impl Plugin for Hello {
    type Config = Config;
    type State = ();

    fn configure(config: Config, _root: &mut Root) -> Result<Self> {
        info!("greeting with {:?}", config.greeting);
        Ok(Hello {
            greeting: config.greeting,
        })
    }

    fn on_request_headers(&mut self, http: &mut Http<'_, ()>) -> Result<Flow> {
        if http.path()? == "/hello" {
            return http.respond(LocalResponse::new(200).text(format!("{}\n", self.greeting)));
        }
        http.request().set("x-hello", &self.greeting)?;
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_plugin_sdk::testing::{Harness, Outcome};
    use serde_json::json;

    #[test]
    fn adds_the_header() {
        let h = Harness::<Hello>::new(json!({ "greeting": "hi" })).unwrap();
        let req = h.request().path("/api");
        assert_eq!(req.on_request_headers(), Outcome::Continue);
        assert_eq!(req.request_header("x-hello").as_deref(), Some("hi"));
    }

    #[test]
    fn answers_hello() {
        let h = Harness::<Hello>::new(json!(null)).unwrap();
        let Outcome::Respond(r) = h.request().path("/hello").on_request_headers() else {
            panic!("expected a local response");
        };
        assert_eq!((r.status, r.body), (200, b"hello\n".to_vec()));
    }

    #[test]
    fn refuses_unknown_keys() {
        let err = Harness::<Hello>::new(json!({ "greting": "hi" })).unwrap_err();
        assert!(err.to_string().contains("unknown field `greting`"), "{err}");
    }
}
