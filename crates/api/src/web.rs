//! The web control panel: a single-page app served at `/`, its files built
//! into the binary (`crates/api/web/`, plain HTML, CSS and JavaScript
//! modules, no build step, nothing fetched from elsewhere). It talks to the
//! same API as any other client: `/parse` REST and LiveQuery, `/v1` and
//! `/v1/events`, from the node's own origin, which CORS admits.

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::ApiState;
use crate::error::ParseError;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// No inline scripts, nothing from other origins; WebSockets to this node.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(root))
        .route(
            "/web/app.js",
            get(|| async { file("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/web/style.css",
            get(|| async { file("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

/// `/`: the panel, or a LiveQuery WebSocket. Parse Server takes LiveQuery
/// upgrades on any path, so apps set `liveQueryServerURL` to
/// `ws://host:port`; a plain GET still gets the panel.
async fn root(State(state): State<ApiState>, req: axum::extract::Request) -> Response {
    if !crate::rest::is_websocket(req.headers()) {
        return file("text/html; charset=utf-8", INDEX_HTML).into_response();
    }
    let (mut parts, _) = req.into_parts();
    match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => crate::livequery::upgrade(state, upgrade).await,
        Err(e) => {
            ParseError::invalid_json(format!("not a usable WebSocket upgrade: {e}")).into_response()
        }
    }
}

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The files change with the binary; a restarted node serves the new ones.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
