//! The web control panel's files as the API serves them (the browser test
//! of the panel itself is tests/tests/web_ui.rs).

mod common;

use common::{fast_config, start};

#[tokio::test]
async fn the_panel_and_every_file_it_names_are_served() {
    let n = start(fast_config(), None).await;
    let page = n.http.get(format!("{}/", n.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    // Nothing from elsewhere: every script and stylesheet is the node's own.
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("/web/"))
        .collect();
    assert!(
        assets.contains(&"/web/app.js") && assets.contains(&"/web/style.css"),
        "{html}"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for path in assets {
        let r = n.http.get(format!("{}{path}", n.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let want = if path.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(want),
            "{path}"
        );
        assert!(!r.text().await.unwrap().is_empty(), "{path}");
    }
    // The page's own origin passes the API's origin check.
    let r = n
        .http
        .get(format!("{}/parse/users/me", n.url))
        .header("Origin", n.url.clone())
        .send()
        .await
        .unwrap();
    assert_ne!(r.json::<serde_json::Value>().await.unwrap()["code"], 119);
}
