//! Finding the line of a key path in block-style YAML, for errors found
//! after deserialisation (when serde no longer knows positions).

/// 1-based (line, column) of the last key of `path`, if present.
pub fn find(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let mut depth = 0;
    let mut min_indent = 0;
    let mut found = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if depth > 0 && indent < min_indent {
            return found;
        }
        let key = trimmed
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        if indent >= min_indent && key == path[depth] && trimmed.contains(':') {
            found = Some((n + 1, indent + 1));
            depth += 1;
            if depth == path.len() {
                return found;
            }
            min_indent = indent + 1;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_nested_keys() {
        let text = "a:\n  b: 1\npipelines:\n  # note\n  metrics: [x]\n";
        assert_eq!(super::find(text, &["pipelines", "metrics"]), Some((5, 3)));
        assert_eq!(super::find(text, &["a", "b"]), Some((2, 3)));
    }
}
