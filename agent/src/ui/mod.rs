//! The web UI: one page, no build step, no external assets (works offline), embedded in the
//! binary. It polls the read-only JSON API, so it is served on every listener.
//!
//! Charts are drawn by uPlot 1.6.32 (MIT, `vendor/LICENSE`), vendored as its release's
//! `dist/uPlot.iife.min.js` and `dist/uPlot.min.css`: a 50 KB library with no dependencies,
//! so the page needs neither a bundler nor a network.

use axum::{
    Router,
    http::header,
    response::{Html, IntoResponse},
    routing::get,
};

const INDEX: &str = include_str!("index.html");
/// The page's scripts and styles, served under `/ui/`: (path, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    ("/ui/app.js", JS, include_str!("app.js")),
    ("/ui/charts.js", JS, include_str!("charts.js")),
    ("/ui/style.css", CSS, include_str!("style.css")),
    (
        "/ui/vendor/uPlot.iife.min.js",
        JS,
        include_str!("vendor/uPlot.iife.min.js"),
    ),
    (
        "/ui/vendor/uPlot.min.css",
        CSS,
        include_str!("vendor/uPlot.min.css"),
    ),
    ("/ui/vendor/LICENSE", TEXT, include_str!("vendor/LICENSE")),
];
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(
        Router::new().route("/", get(|| async { Html(INDEX) })),
        |router, &(path, ctype, body)| {
            router.route(
                path,
                get(move || async move { ([(header::CONTENT_TYPE, ctype)], body).into_response() }),
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_loads_is_served_and_nothing_comes_from_elsewhere() {
        for src in INDEX
            .split(['"', '\''])
            .filter(|s| s.starts_with('/') || s.starts_with("http"))
        {
            assert!(
                ASSETS.iter().any(|(p, _, _)| *p == src),
                "index.html loads {src}, which the agent does not serve"
            );
        }
        assert!(INDEX.contains("/ui/vendor/uPlot.iife.min.js"));
    }

    #[test]
    fn the_vendored_chart_library_keeps_its_license_and_version() {
        let (_, _, lib) = ASSETS[3];
        assert!(lib.starts_with("/*! https://github.com/leeoniya/uPlot (v1.6.32) */"));
        let (_, _, license) = ASSETS[5];
        assert!(license.contains("The MIT License") && license.contains("Leon Sorokin"));
    }
}
