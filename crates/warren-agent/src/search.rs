//! `/files/search` (content) and `/files/search/files` (file names).
//!
//! Built on ripgrep's own libraries rather than on a ripgrep binary in the image:
//! `ignore` walks the tree the way ripgrep does (.gitignore, .ignore, hidden files,
//! file types, globs) and `grep-searcher` + `grep-regex` search each file (binary
//! detection, line numbers, context). The client's `search.init()` exists to install
//! ripgrep; here the engine is part of the agent, so status reports it as installed.

use crate::api::{flag, ApiQuery, AppState};
use crate::error::{ApiError, ApiResult};
use crate::files::validate_path;
use axum::extract::State;
use axum::Json;
use grep_matcher::Matcher;
use grep_regex::RegexMatcherBuilder;
use grep_searcher::{BinaryDetection, Searcher, SearcherBuilder, Sink, SinkContext, SinkMatch};
use ignore::overrides::OverrideBuilder;
use ignore::types::TypesBuilder;
use ignore::{WalkBuilder, WalkState};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Matching lines one content search returns when the request names no limit.
pub const DEFAULT_MAX_RESULTS: usize = 1000;
/// The most matching lines any content search returns.
pub const MAX_RESULTS: usize = 20_000;
/// File names one file-name search returns when the request names no limit.
pub const DEFAULT_MAX_FILES: usize = 200;
/// How long a search may run when the request names no timeout (seconds).
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
/// The longest timeout a request may ask for (seconds).
pub const MAX_TIMEOUT_SECS: u64 = 120;
/// Most context lines on either side of a match.
pub const MAX_CONTEXT_LINES: usize = 20;
/// Longest line text returned; longer lines are cut (minified files).
const MAX_LINE_CHARS: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct ContentQuery {
    q: Option<String>,
    path: Option<String>,
    case_sensitive: Option<String>,
    regex: Option<String>,
    whole_word: Option<String>,
    max_results: Option<String>,
    timeout: Option<String>,
    context_lines: Option<String>,
    file_types: Option<String>,
    include_hidden: Option<String>,
    no_gitignore: Option<String>,
    ignore_patterns: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct FilesQuery {
    q: Option<String>,
    path: Option<String>,
    case_sensitive: Option<String>,
    include_hidden: Option<String>,
    max_results: Option<String>,
    ignore_patterns: Option<String>,
}

/// One matching line. `before`/`after` carry context lines when asked for.
#[derive(Debug, Serialize, PartialEq)]
pub struct SearchMatch {
    pub line: u64,
    pub column: u64,
    pub text: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<ContextLine>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<ContextLine>,
}

#[derive(Debug, Serialize, PartialEq, Clone)]
pub struct ContextLine {
    pub line: u64,
    pub text: String,
}

#[derive(Debug, Serialize)]
pub struct ContentResponse {
    pub success: bool,
    pub query: String,
    pub path: String,
    pub results: BTreeMap<String, Vec<SearchMatch>>,
    pub total_matches: usize,
    pub total_files: usize,
    /// The result limit or the timeout cut the search short.
    pub capped: bool,
    pub timed_out: bool,
}

#[derive(Debug, Serialize)]
pub struct FilesResponse {
    pub success: bool,
    pub query: String,
    pub path: String,
    pub files: Vec<String>,
    pub total_files: usize,
    pub capped: bool,
}

/// What to search, validated.
#[derive(Debug, Clone)]
pub struct ContentSearch {
    pub query: String,
    pub root: PathBuf,
    pub case_sensitive: bool,
    pub regex: bool,
    pub whole_word: bool,
    pub max_results: usize,
    pub timeout: Duration,
    pub context_lines: usize,
    pub file_types: Vec<String>,
    pub include_hidden: bool,
    pub no_gitignore: bool,
    pub ignore_patterns: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FileSearch {
    pub query: String,
    pub root: PathBuf,
    pub case_sensitive: bool,
    pub include_hidden: bool,
    pub max_results: usize,
    pub ignore_patterns: Vec<String>,
}

fn number(name: &str, v: &Option<String>, default: u64, max: u64) -> ApiResult<u64> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(default),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(ApiError::validation(format!(
                "{name} must be a whole number from 0 to {max}, got {s:?}"
            ))),
        },
    }
}

fn list(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn query_text(q: &Option<String>) -> ApiResult<String> {
    match q.as_deref() {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(ApiError::validation("q (the search query) is required")),
    }
}

fn root(path: &Option<String>, default: &Path) -> ApiResult<PathBuf> {
    let p = match path.as_deref() {
        None | Some("") => default.to_path_buf(),
        Some(p) => validate_path(p)?,
    };
    if !p.exists() {
        return Err(ApiError::NotFound(format!(
            "no such file or directory: {}",
            p.display()
        )));
    }
    Ok(p)
}

impl ContentSearch {
    pub fn from_query(q: &ContentQuery, default_root: &Path) -> ApiResult<ContentSearch> {
        let max_results = number(
            "max_results",
            &q.max_results,
            DEFAULT_MAX_RESULTS as u64,
            MAX_RESULTS as u64,
        )? as usize;
        if max_results == 0 {
            return Err(ApiError::validation("max_results must be at least 1"));
        }
        let timeout = number(
            "timeout",
            &q.timeout,
            DEFAULT_TIMEOUT_SECS,
            MAX_TIMEOUT_SECS,
        )?;
        let s = ContentSearch {
            query: query_text(&q.q)?,
            root: root(&q.path, default_root)?,
            case_sensitive: flag(&q.case_sensitive),
            regex: flag(&q.regex),
            whole_word: flag(&q.whole_word),
            max_results,
            timeout: Duration::from_secs(timeout.max(1)),
            context_lines: number(
                "context_lines",
                &q.context_lines,
                0,
                MAX_CONTEXT_LINES as u64,
            )? as usize,
            file_types: list(&q.file_types),
            include_hidden: flag(&q.include_hidden),
            no_gitignore: flag(&q.no_gitignore),
            ignore_patterns: list(&q.ignore_patterns),
        };
        // Compile once here so a bad pattern is a 400, not an empty result.
        s.matcher()?;
        s.walker()?;
        Ok(s)
    }

    fn matcher(&self) -> ApiResult<grep_regex::RegexMatcher> {
        RegexMatcherBuilder::new()
            .case_insensitive(!self.case_sensitive)
            .fixed_strings(!self.regex)
            .word(self.whole_word)
            .build(&self.query)
            .map_err(|e| ApiError::validation(format!("invalid search pattern: {e}")))
    }

    fn walker(&self) -> ApiResult<WalkBuilder> {
        let mut w = walk_builder(&self.root, self.include_hidden, &self.ignore_patterns)?;
        if self.no_gitignore {
            w.git_ignore(false)
                .git_global(false)
                .git_exclude(false)
                .ignore(false)
                .parents(false);
        }
        if !self.file_types.is_empty() {
            let mut types = TypesBuilder::new();
            types.add_defaults();
            let known: Vec<String> = types
                .definitions()
                .into_iter()
                .map(|d| d.name().to_string())
                .collect();
            for t in &self.file_types {
                let name = t.trim_start_matches('.');
                if !known.iter().any(|k| k == name) {
                    // Not one of ripgrep's type names: take it as an extension.
                    types.add(name, &format!("*.{name}")).map_err(|e| {
                        ApiError::validation(format!("invalid file type {t:?}: {e}"))
                    })?;
                }
                types.select(name);
            }
            let types = types
                .build()
                .map_err(|e| ApiError::validation(format!("invalid file_types: {e}")))?;
            w.types(types);
        }
        Ok(w)
    }

    /// Run the search (blocking).
    pub fn run(&self) -> ApiResult<ContentResponse> {
        let matcher = self.matcher()?;
        let walker = self.walker()?.build();
        let deadline = Instant::now() + self.timeout;
        let mut searcher = SearcherBuilder::new()
            .line_number(true)
            .binary_detection(BinaryDetection::quit(0))
            .before_context(self.context_lines)
            .after_context(self.context_lines)
            .build();
        let mut results: BTreeMap<String, Vec<SearchMatch>> = BTreeMap::new();
        let mut total = 0usize;
        let mut capped = false;
        let mut timed_out = false;
        for entry in walker {
            if Instant::now() >= deadline {
                timed_out = true;
                capped = true;
                break;
            }
            let Ok(entry) = entry else { continue };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let mut sink = Collect {
                matcher: &matcher,
                out: Vec::new(),
                pending_before: Vec::new(),
                room: self.max_results - total,
                full: false,
                deadline,
                timed_out: false,
            };
            // Unreadable files are skipped, as ripgrep does (it reports them on stderr).
            if searcher
                .search_path(&matcher, entry.path(), &mut sink)
                .is_err()
            {
                continue;
            }
            total += sink.out.len();
            if !sink.out.is_empty() {
                results.insert(entry.path().to_string_lossy().into_owned(), sink.out);
            }
            if sink.timed_out {
                timed_out = true;
                capped = true;
                break;
            }
            if sink.full {
                capped = true;
                break;
            }
        }
        Ok(ContentResponse {
            success: true,
            query: self.query.clone(),
            path: self.root.to_string_lossy().into_owned(),
            total_files: results.len(),
            total_matches: total,
            results,
            capped,
            timed_out,
        })
    }
}

fn walk_builder(
    root: &Path,
    include_hidden: bool,
    ignore_patterns: &[String],
) -> ApiResult<WalkBuilder> {
    let mut w = WalkBuilder::new(root);
    w.hidden(!include_hidden)
        // Respect .gitignore files even outside a git checkout: a workspace tree is
        // often a copy of a repository without its .git.
        .require_git(false)
        .follow_links(false)
        .same_file_system(false);
    if !ignore_patterns.is_empty() {
        let mut o = OverrideBuilder::new(root);
        for p in ignore_patterns {
            o.add(&format!("!{p}"))
                .map_err(|e| ApiError::validation(format!("invalid ignore pattern {p:?}: {e}")))?;
        }
        let o = o
            .build()
            .map_err(|e| ApiError::validation(format!("invalid ignore_patterns: {e}")))?;
        w.overrides(o);
    }
    Ok(w)
}

fn cut(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    let s = s.trim_end_matches(['\n', '\r']);
    match s.char_indices().nth(MAX_LINE_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Collects the matching lines of one file, with their context.
struct Collect<'m> {
    matcher: &'m grep_regex::RegexMatcher,
    out: Vec<SearchMatch>,
    pending_before: Vec<ContextLine>,
    room: usize,
    full: bool,
    deadline: Instant,
    timed_out: bool,
}

impl Sink for Collect<'_> {
    type Error = std::io::Error;

    fn matched(&mut self, _: &Searcher, m: &SinkMatch<'_>) -> Result<bool, Self::Error> {
        let first_line = m.line_number().unwrap_or(0);
        // With multi-line off, a match is one line, but be safe about several.
        for (i, line) in m.lines().enumerate() {
            if self.out.len() >= self.room {
                self.full = true;
                return Ok(false);
            }
            let column = self
                .matcher
                .find(line)
                .ok()
                .flatten()
                .map(|r| r.start() as u64 + 1)
                .unwrap_or(1);
            self.out.push(SearchMatch {
                line: first_line + i as u64,
                column,
                text: cut(line),
                before: std::mem::take(&mut self.pending_before),
                after: Vec::new(),
            });
        }
        if Instant::now() >= self.deadline {
            self.timed_out = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn context(&mut self, _: &Searcher, c: &SinkContext<'_>) -> Result<bool, Self::Error> {
        let line = ContextLine {
            line: c.line_number().unwrap_or(0),
            text: cut(c.bytes()),
        };
        match c.kind() {
            grep_searcher::SinkContextKind::Before => self.pending_before.push(line),
            grep_searcher::SinkContextKind::After => {
                if let Some(last) = self.out.last_mut() {
                    last.after.push(line);
                }
            }
            grep_searcher::SinkContextKind::Other => {}
        }
        Ok(true)
    }
}

impl FileSearch {
    pub fn from_query(q: &FilesQuery, default_root: &Path) -> ApiResult<FileSearch> {
        let max_results = number(
            "max_results",
            &q.max_results,
            DEFAULT_MAX_FILES as u64,
            MAX_RESULTS as u64,
        )? as usize;
        if max_results == 0 {
            return Err(ApiError::validation("max_results must be at least 1"));
        }
        let s = FileSearch {
            query: query_text(&q.q)?,
            root: root(&q.path, default_root)?,
            case_sensitive: flag(&q.case_sensitive),
            include_hidden: flag(&q.include_hidden),
            max_results,
            ignore_patterns: list(&q.ignore_patterns),
        };
        s.pattern()?;
        walk_builder(&s.root, s.include_hidden, &s.ignore_patterns)?;
        Ok(s)
    }

    /// A query with glob characters is a glob on the path below the root (or on the
    /// name when it has no `/`); any other query is a substring of the path below the
    /// root.
    fn pattern(&self) -> ApiResult<NamePattern> {
        if self.query.contains(['*', '?', '[']) {
            let glob = globset::GlobBuilder::new(&self.query)
                .case_insensitive(!self.case_sensitive)
                .literal_separator(false)
                .build()
                .map_err(|e| ApiError::validation(format!("invalid glob {:?}: {e}", self.query)))?
                .compile_matcher();
            Ok(NamePattern::Glob {
                glob,
                on_name: !self.query.contains('/'),
            })
        } else if self.case_sensitive {
            Ok(NamePattern::Substring(self.query.clone()))
        } else {
            Ok(NamePattern::Substring(self.query.to_lowercase()))
        }
    }

    pub fn run(&self) -> ApiResult<FilesResponse> {
        let pattern = self.pattern()?;
        let walker = walk_builder(&self.root, self.include_hidden, &self.ignore_patterns)?;
        let deadline = Instant::now() + Duration::from_secs(DEFAULT_TIMEOUT_SECS);
        let files = std::sync::Mutex::new(Vec::new());
        let capped = std::sync::atomic::AtomicBool::new(false);
        walker.build_parallel().run(|| {
            Box::new(|entry| {
                let Ok(entry) = entry else {
                    return WalkState::Continue;
                };
                if entry.depth() == 0 {
                    return WalkState::Continue;
                }
                let rel = entry
                    .path()
                    .strip_prefix(&self.root)
                    .unwrap_or(entry.path());
                let hit = match &pattern {
                    NamePattern::Glob { glob, on_name } => {
                        if *on_name {
                            entry.path().file_name().is_some_and(|n| glob.is_match(n))
                        } else {
                            glob.is_match(rel)
                        }
                    }
                    NamePattern::Substring(s) => {
                        let r = rel.to_string_lossy();
                        if self.case_sensitive {
                            r.contains(s.as_str())
                        } else {
                            r.to_lowercase().contains(s.as_str())
                        }
                    }
                };
                let Ok(mut f) = files.lock() else {
                    return WalkState::Quit;
                };
                if hit {
                    if f.len() >= self.max_results {
                        capped.store(true, std::sync::atomic::Ordering::Relaxed);
                        return WalkState::Quit;
                    }
                    f.push(entry.path().to_string_lossy().into_owned());
                }
                if Instant::now() >= deadline {
                    capped.store(true, std::sync::atomic::Ordering::Relaxed);
                    return WalkState::Quit;
                }
                WalkState::Continue
            })
        });
        let mut files = files.into_inner().unwrap_or_default();
        files.sort();
        Ok(FilesResponse {
            success: true,
            query: self.query.clone(),
            path: self.root.to_string_lossy().into_owned(),
            total_files: files.len(),
            files,
            capped: capped.into_inner(),
        })
    }
}

enum NamePattern {
    Glob {
        glob: globset::GlobMatcher,
        on_name: bool,
    },
    Substring(String),
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("search worker failed: {e}")))?
}

/// `GET /files/search`
pub async fn content(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ContentQuery>,
) -> ApiResult<Json<ContentResponse>> {
    let default_root = st.ws.default_cwd();
    blocking(move || ContentSearch::from_query(&q, &default_root)?.run())
        .await
        .map(Json)
}

/// `GET /files/search/files`
pub async fn files(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<FilesQuery>,
) -> ApiResult<Json<FilesResponse>> {
    let default_root = st.ws.default_cwd();
    blocking(move || FileSearch::from_query(&q, &default_root)?.run())
        .await
        .map(Json)
}

/// `GET /files/search/init` (status) and `POST /files/search/init` (the client's
/// "install ripgrep"): the engine is built into the agent, so there is nothing to
/// install and both report what serves searches.
pub async fn init() -> Json<Value> {
    Json(json!({
        "success": true,
        "installed": true,
        "path": "builtin",
        "version": concat!("warren-agent ", env!("CARGO_PKG_VERSION"), " (ripgrep's ignore and grep crates)"),
        "message": "search is built into the Warren agent; nothing to install",
    }))
}
