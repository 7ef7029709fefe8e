//! Content and file-name search: .gitignore, hidden files, types, limits, bad input.

mod common;

use common::{assert_error, Agent};
use hyper::StatusCode;
use serde_json::Value;

fn tree(a: &Agent) -> String {
    let root = a.path("proj");
    for d in ["src/net", "target/debug", ".cache", "docs"] {
        std::fs::create_dir_all(format!("{root}/{d}")).unwrap();
    }
    let files = [
        (".gitignore", "target/\n*.log\n"),
        (
            "src/main.rs",
            "fn main() {\n    handleRequest();\n}\n// HandleRequest again\n",
        ),
        ("src/net/server.ts", "export function handleRequest() {}\n"),
        ("target/debug/gen.rs", "handleRequest in build output\n"),
        ("build.log", "handleRequest logged\n"),
        (".cache/hidden.rs", "handleRequest hidden\n"),
        ("docs/notes.md", "mentions handleRequestLater\n"),
    ];
    for (p, c) in files {
        std::fs::write(format!("{root}/{p}"), c).unwrap();
    }
    // A binary file with the word in it is skipped.
    std::fs::write(format!("{root}/src/blob.bin"), b"\0\0handleRequest\0").unwrap();
    root
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v["results"].as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn content_search_respects_gitignore_hidden_and_options() {
    let a = Agent::start();
    let root = tree(&a);

    let (s, v) = a
        .get(&format!("/files/search?q=handleRequest&path={root}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["query"], "handleRequest");
    assert_eq!(
        keys(&v),
        vec![
            format!("{root}/docs/notes.md"),
            format!("{root}/src/main.rs"),
            format!("{root}/src/net/server.ts"),
        ],
        "ignored, hidden and binary files must not be searched: {v}"
    );
    // Case-insensitive by default: both lines of main.rs match.
    let main = &v["results"][format!("{root}/src/main.rs")];
    assert_eq!(main.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(main[0]["line"], 2);
    assert_eq!(main[0]["column"], 5);
    assert_eq!(main[0]["text"], "    handleRequest();");
    assert_eq!(main[1]["line"], 4);
    assert_eq!(v["total_matches"], 4);
    assert_eq!(v["total_files"], 3);
    assert_eq!(v["capped"], false);

    // Case-sensitive, whole word: notes.md (handleRequestLater) and line 4 drop out.
    let (_, v) = a
        .get(&format!(
            "/files/search?q=handleRequest&path={root}&case_sensitive=true&whole_word=true"
        ))
        .await;
    assert_eq!(
        keys(&v),
        vec![
            format!("{root}/src/main.rs"),
            format!("{root}/src/net/server.ts")
        ],
        "{v}"
    );
    assert_eq!(v["total_matches"], 2);

    // Hidden and ignored files when asked for.
    let (_, v) = a
        .get(&format!(
            "/files/search?q=handleRequest&path={root}&include_hidden=true&no_gitignore=true"
        ))
        .await;
    let k = keys(&v);
    assert!(k.contains(&format!("{root}/.cache/hidden.rs")), "{v}");
    assert!(k.contains(&format!("{root}/target/debug/gen.rs")), "{v}");
    assert!(k.contains(&format!("{root}/build.log")), "{v}");
    assert!(!k.contains(&format!("{root}/src/blob.bin")), "{v}");

    // File types (a ripgrep type name and a bare extension) and ignore patterns.
    let (_, v) = a
        .get(&format!(
            "/files/search?q=handleRequest&path={root}&file_types=ts"
        ))
        .await;
    assert_eq!(keys(&v), vec![format!("{root}/src/net/server.ts")], "{v}");
    let (_, v) = a
        .get(&format!(
            "/files/search?q=handleRequest&path={root}&file_types=rust"
        ))
        .await;
    assert_eq!(keys(&v), vec![format!("{root}/src/main.rs")], "{v}");
    let (_, v) = a
        .get(&format!(
            "/files/search?q=handleRequest&path={root}&ignore_patterns=src/**"
        ))
        .await;
    assert_eq!(keys(&v), vec![format!("{root}/docs/notes.md")], "{v}");

    // Regex with context lines.
    let (_, v) = a
        .get(&format!(
            "/files/search?q=%5Efn%20%5Cw%2B&path={root}/src&regex=true&context_lines=1"
        ))
        .await;
    let m = &v["results"][format!("{root}/src/main.rs")][0];
    assert_eq!(m["line"], 1, "{v}");
    assert_eq!(m["after"][0]["line"], 2, "{v}");

    // The result limit caps the search and says so.
    let (_, v) = a
        .get(&format!(
            "/files/search?q=handleRequest&path={root}&max_results=1"
        ))
        .await;
    assert_eq!(v["total_matches"], 1, "{v}");
    assert_eq!(v["capped"], true, "{v}");
}

#[tokio::test]
async fn file_name_search() {
    let a = Agent::start();
    let root = tree(&a);
    let (s, v) = a
        .get(&format!("/files/search/files?q=SERVER&path={root}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["files"],
        serde_json::json!([format!("{root}/src/net/server.ts")])
    );
    assert_eq!(v["total_files"], 1);

    let (_, v) = a
        .get(&format!("/files/search/files?q=*.rs&path={root}"))
        .await;
    assert_eq!(
        v["files"],
        serde_json::json!([format!("{root}/src/main.rs")]),
        "{v}"
    );

    let (_, v) = a
        .get(&format!(
            "/files/search/files?q=*.rs&path={root}&include_hidden=true"
        ))
        .await;
    assert_eq!(
        v["files"],
        serde_json::json!([
            format!("{root}/.cache/hidden.rs"),
            format!("{root}/src/main.rs")
        ]),
        "{v}"
    );

    let (s, v) = a.get("/files/search/init").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["installed"], true);
}

#[tokio::test]
async fn bad_search_input_is_a_clear_error() {
    let a = Agent::start();
    let root = tree(&a);
    let (s, v) = a.get(&format!("/files/search?path={root}")).await;
    assert_error(s, &v, 422, "validation_error");
    let (s, v) = a
        .get(&format!(
            "/files/search?q=%28unclosed&regex=true&path={root}"
        ))
        .await;
    assert_error(s, &v, 422, "validation_error");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("pattern"),
        "{v}"
    );
    let (s, v) = a.get("/files/search?q=x&path=relative/dir").await;
    assert_error(s, &v, 422, "validation_error");
    let (s, v) = a
        .get(&format!("/files/search?q=x&path={root}/missing"))
        .await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = a
        .get(&format!("/files/search?q=x&path={root}&max_results=lots"))
        .await;
    assert_error(s, &v, 422, "validation_error");
    let (s, v) = a
        .get(&format!("/files/search/files?q=%5B&path={root}"))
        .await;
    assert_error(s, &v, 422, "validation_error");
}
