//! A read-only view of the request as the filter sees it: method, path and the
//! header list, with the case-insensitive, comma-aware look-ups HTTP needs.

/// The facts of one request that the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path`, query string included.
    pub path: &'a str,
    /// Every header line, in order; a name may repeat.
    pub headers: &'a [(String, String)],
}

impl<'a> Request<'a> {
    /// The path without its query string or fragment.
    pub fn path_only(&self) -> &'a str {
        let end = self.path.find(['?', '#']).unwrap_or(self.path.len());
        &self.path[..end]
    }

    /// Every value of header `name` (matched case-insensitively), one per line.
    pub fn values(&self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` is present at all.
    pub fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The comma-separated list elements of header `name` over all its lines,
    /// trimmed, with empty elements dropped (RFC 9110 section 5.6.1).
    pub fn tokens(&self, name: &'a str) -> Vec<&'a str> {
        self.values(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The single value of header `name`, trimmed; `None` when absent or repeated.
    pub fn single(&self, name: &'a str) -> Option<&'a str> {
        let mut it = self.values(name);
        let first = it.next()?;
        it.next().is_none().then(|| first.trim())
    }
}
