//! A real node for the API's tests: a data directory and a redb store on
//! disk in a temp dir, the API served on a loopback port.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use serde_json::{Value, json};
use tincan_api::{ApiConfig, ApiState, VoiceControl};
use tincan_core::keystore::{Identity, KdfParams, SealedIdentity};
use tincan_core::{Hlc, NodeKey, UserKey};
use tincan_store::datadir::DataDir;
use tincan_store::{Store, StoreConfig};

pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub store: Arc<Store>,
    pub http: reqwest::Client,
    /// The node's own user key (its account is node / node-pw).
    pub node_key: UserKey,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn fast_config() -> ApiConfig {
    ApiConfig {
        kdf: KdfParams::INSECURE_FAST,
        ..ApiConfig::default()
    }
}

/// A node whose own identity is `node`/`node-pw`.
pub async fn start(config: ApiConfig, voice: Option<Arc<dyn VoiceControl>>) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::create(dir.path().join("data")).unwrap();
    let identity = Identity {
        username: "node".into(),
        user_key: UserKey::generate().unwrap(),
        node_key: Some(NodeKey::generate().unwrap()),
    };
    let sealed = SealedIdentity::seal(&identity, b"node-pw", KdfParams::INSECURE_FAST).unwrap();
    data.create_identity(&sealed).unwrap();
    let store = Arc::new(Store::open(data.store_path(), StoreConfig::default()).unwrap());
    store
        .apply(
            tincan_core::make::profile(&identity.user_key, Hlc::new(1_700_000_000_000, 0), "node")
                .unwrap(),
        )
        .unwrap();
    let node_key = UserKey::from_seed(&identity.user_key.seed());
    let mut b = ApiState::builder(store.clone(), data, &identity).config(config);
    if let Some(v) = voice {
        b = b.voice(v);
    }
    let state = b.build().unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(tincan_api::serve(listener, state));
    TestNode {
        dir,
        url,
        store,
        http: reqwest::Client::new(),
        node_key,
        task,
    }
}

impl TestNode {
    /// A request with the session header; returns (status, body).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .http
            .request(m, format!("{}{}", self.url, path))
            .header("X-Parse-Application-Id", "test");
        if let Some(t) = token {
            r = r.header("X-Parse-Session-Token", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (s, v) = self.call(method, path, token, body).await;
        assert!((200..300).contains(&s), "{method} {path} answered {s}: {v}");
        v
    }

    /// Expects a Parse error with `code`.
    pub async fn err(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        code: i64,
    ) -> Value {
        let (s, v) = self.call(method, path, token, body).await;
        assert!((400..500).contains(&s), "{method} {path} answered {s}: {v}");
        assert_eq!(v["code"], code, "{method} {path}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        v
    }

    /// Signs up; returns (user id, session token).
    pub async fn sign_up(&self, name: &str) -> (String, String) {
        let v = self
            .ok(
                "POST",
                "/parse/users",
                None,
                Some(json!({"username": name, "password": format!("{name}-pw")})),
            )
            .await;
        (
            v["objectId"].as_str().unwrap().to_owned(),
            v["sessionToken"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn create(&self, class: &str, token: &str, body: Value) -> String {
        let v = self
            .ok(
                "POST",
                &format!("/parse/classes/{class}"),
                Some(token),
                Some(body),
            )
            .await;
        v["objectId"].as_str().unwrap().to_owned()
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{}", self.url.replacen("http://", "ws://", 1), path)
    }
}

pub fn room_ptr(id: &str) -> Value {
    json!({"__type": "Pointer", "className": "Room", "objectId": id})
}

pub fn user_ptr(id: &str) -> Value {
    json!({"__type": "Pointer", "className": "_User", "objectId": id})
}
