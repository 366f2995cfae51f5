//! Detection results kept across runs (PROTOCOL.md section 6): for each server
//! (and, once the client can use one, each HTTP proxy on the way), the path a
//! tunnel takes and, for an upgrade, the framing that worked, with why. One
//! small JSON file per server under `$XDG_CACHE_HOME/alpn-tunnel/` (else
//! `$HOME/.cache/alpn-tunnel/`), written atomically, trusted for a time to
//! live. A file that cannot be read or parsed is ignored with a warning: the
//! cache only ever saves a detection, it never stops a tunnel.

use std::fs;
use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::warn;
use serde::{Deserialize, Serialize};

use crate::{Path, ServerUrl, UpgradeMode};

/// The default time to live of an entry.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// The cache directory of one user.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    /// Entries older than this are ignored (and replaced by a fresh detection).
    ttl: Duration,
}

/// What is known about one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path a tunnel takes (for an upgrade, the framing asked for).
    pub path: Path,
    /// Why: what detection or the framing ladder found.
    pub why: String,
    /// When it was stored.
    pub stored: SystemTime,
}

/// An entry as stored; the key fields are kept to check the file is the right one.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    server: String,
    /// The HTTP proxy the server is reached through; `None`: reached directly.
    via_proxy: Option<String>,
    /// `direct`, or the framing name of an upgrade (`websocket`, `alpn-ping`, ...).
    path: String,
    why: String,
    /// Seconds since the Unix epoch.
    stored: u64,
}

/// Where a user's cache lives: `$XDG_CACHE_HOME/alpn-tunnel`, else
/// `$HOME/.cache/alpn-tunnel`; `None` when neither variable is set.
pub fn user_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("alpn-tunnel"))
}

fn path_name(path: Path) -> &'static str {
    match path {
        Path::Direct => "direct",
        Path::Upgrade(f) => f.name(),
    }
}

fn parse_path(name: &str) -> Option<Path> {
    if name == "direct" {
        return Some(Path::Direct);
    }
    match UpgradeMode::parse(name).ok()? {
        UpgradeMode::Framing(f) => Some(Path::Upgrade(f)),
        UpgradeMode::Auto | UpgradeMode::Always | UpgradeMode::Never => None,
    }
}

/// The key of a server (and proxy), as one line.
fn key(server: &ServerUrl, via_proxy: Option<&str>) -> String {
    match via_proxy {
        Some(proxy) => format!("{server} via {proxy}"),
        None => server.to_string(),
    }
}

/// A file name for `key`: letters, digits, `.` and `-` as they are, every
/// other byte as `_XX`, so that different keys never share a file.
fn file_name(key: &str) -> String {
    let mut name = String::with_capacity(key.len() + 5);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("_{b:02X}"));
        }
    }
    name + ".json"
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Entry {
    /// How long ago it was stored.
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.stored)
            .unwrap_or_default()
    }

    /// For logs and the probe: `upgrade alpn-ping, stored 2m ago (why)`.
    pub fn describe(&self) -> String {
        let age = Duration::from_secs(self.age().as_secs());
        format!(
            "{}, stored {} ago ({})",
            self.path,
            humantime::format_duration(age),
            self.why
        )
    }
}

impl Cache {
    /// A cache in `dir` whose entries live for `ttl`; `None` when `ttl` is
    /// zero (the cache is off).
    pub fn new(dir: impl Into<PathBuf>, ttl: Duration) -> Option<Cache> {
        (!ttl.is_zero()).then(|| Cache {
            dir: dir.into(),
            ttl,
        })
    }

    /// The user's cache ([`user_dir`]) with `ttl`; `None` when it is off or
    /// there is no home to keep it in.
    pub fn user(ttl: Duration) -> Option<Cache> {
        Cache::new(user_dir()?, ttl)
    }

    /// The directory.
    pub fn dir(&self) -> &FsPath {
        &self.dir
    }

    /// The time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn file(&self, server: &ServerUrl, via_proxy: Option<&str>) -> PathBuf {
        self.dir.join(file_name(&key(server, via_proxy)))
    }

    /// The live entry for `server` (reached through `via_proxy`, if any): `None`
    /// when there is none, it has expired, or the file is unusable (with a warning).
    pub fn get(&self, server: &ServerUrl, via_proxy: Option<&str>) -> Option<Entry> {
        let file = self.file(server, via_proxy);
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!("ignoring the cache file {}: {e}", file.display());
                return None;
            }
        };
        let entry = match parse(&text, &key(server, via_proxy)) {
            Ok(entry) => entry,
            Err(why) => {
                warn!("ignoring the cache file {}: {why}", file.display());
                return None;
            }
        };
        (entry.age() < self.ttl && entry.stored <= SystemTime::now() + Duration::from_secs(60))
            .then_some(entry)
    }

    /// Stores `path` for `server`, replacing the file atomically (a temporary
    /// file, then a rename). A failure is a warning: the cache is an aid only.
    pub fn put(&self, server: &ServerUrl, via_proxy: Option<&str>, path: Path, why: &str) {
        let stored = Stored {
            server: server.to_string(),
            via_proxy: via_proxy.map(str::to_string),
            path: path_name(path).to_string(),
            why: why.to_string(),
            stored: unix(SystemTime::now()),
        };
        let file = self.file(server, via_proxy);
        let write = || -> io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let text = serde_json::to_string_pretty(&stored).map_err(io::Error::other)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            io::Write::write_all(&mut tmp, text.as_bytes())?;
            tmp.persist(&file).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            warn!("could not write the cache file {}: {e}", file.display());
        }
    }

    /// Drops what is stored for `server` (through `via_proxy`, if any).
    pub fn remove(&self, server: &ServerUrl, via_proxy: Option<&str>) {
        let file = self.file(server, via_proxy);
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!("could not remove the cache file {}: {e}", file.display()),
        }
    }
}

fn parse(text: &str, expected_key: &str) -> Result<Entry, String> {
    let s: Stored = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let found = match &s.via_proxy {
        Some(p) => format!("{} via {p}", s.server),
        None => s.server.clone(),
    };
    if found != expected_key {
        return Err(format!("it is for {found:?}"));
    }
    let path = parse_path(&s.path).ok_or_else(|| format!("unknown path {:?}", s.path))?;
    Ok(Entry {
        path,
        why: s.why,
        stored: UNIX_EPOCH + Duration::from_secs(s.stored),
    })
}

/// Removes the cached entries in `dir`: all of them, or those of `server`
/// (through any proxy). Returns the servers forgotten. Files that cannot be
/// read are removed when forgetting everything, and left otherwise.
pub fn forget(dir: &FsPath, server: Option<&ServerUrl>) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let wanted = server.map(ToString::to_string);
    let mut forgotten = Vec::new();
    for entry in entries {
        let file = entry?.path();
        if file.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let stored: Option<Stored> = fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let name = match (&stored, &wanted) {
            (Some(s), Some(w)) if &s.server != w => continue,
            (None, Some(_)) => continue,
            (Some(s), _) => match &s.via_proxy {
                Some(p) => format!("{} via {p}", s.server),
                None => s.server.clone(),
            },
            (None, None) => format!("{} (unreadable)", file.display()),
        };
        fs::remove_file(&file)?;
        forgotten.push(name);
    }
    forgotten.sort();
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alpn_protocol::framing::Framing;

    fn server(url: &str) -> ServerUrl {
        ServerUrl::parse(url).unwrap()
    }

    #[test]
    fn an_entry_round_trips_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("alpn-tunnel"), DEFAULT_TTL).unwrap();
        let s = server("https://lb.example.com");
        assert_eq!(cache.get(&s, None), None);
        cache.put(
            &s,
            None,
            Path::Upgrade(Framing::AlpnPing),
            "websocket refused",
        );
        let got = cache.get(&s, None).unwrap();
        assert_eq!(got.path, Path::Upgrade(Framing::AlpnPing));
        assert_eq!(got.why, "websocket refused");
        // Another proxy, another entry.
        assert_eq!(cache.get(&s, Some("http://proxy:3128")), None);
        // An entry older than the time to live is not used.
        let short = Cache::new(cache.dir(), Duration::from_secs(1)).unwrap();
        let file = cache.file(&s, None);
        let text = fs::read_to_string(&file).unwrap();
        let old = text.replace(
            &format!("\"stored\": {}", unix(got.stored)),
            &format!("\"stored\": {}", unix(got.stored) - 5),
        );
        assert_ne!(old, text);
        fs::write(&file, old).unwrap();
        assert_eq!(short.get(&s, None), None);
        assert!(cache.get(&s, None).is_some());
        assert!(Cache::new(dir.path(), Duration::ZERO).is_none(), "0 is off");
    }

    #[test]
    fn a_corrupt_file_is_ignored_and_forget_removes_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), DEFAULT_TTL).unwrap();
        let (a, b) = (server("https://a.example"), server("https://b.example"));
        cache.put(&a, None, Path::Direct, "negotiated");
        cache.put(&b, None, Path::Direct, "negotiated");
        cache.put(&b, Some("http://proxy:3128"), Path::Direct, "negotiated");
        fs::write(cache.file(&a, None), "{not json").unwrap();
        assert_eq!(cache.get(&a, None), None);
        assert_eq!(cache.get(&b, None).unwrap().path, Path::Direct);
        assert_eq!(
            forget(dir.path(), Some(&b)).unwrap(),
            vec![
                "https://b.example:443/connectionupgrade".to_string(),
                "https://b.example:443/connectionupgrade via http://proxy:3128".to_string()
            ]
        );
        assert_eq!(
            forget(dir.path(), None).unwrap().len(),
            1,
            "the corrupt one"
        );
        assert!(forget(&dir.path().join("none"), None).unwrap().is_empty());
    }

    #[test]
    fn file_names_keep_keys_apart() {
        assert_ne!(file_name("https://a/b_c"), file_name("https://a/b/c"));
        assert_eq!(file_name("a.b-c"), "a.b-c.json");
    }
}
