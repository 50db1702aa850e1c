//! Error chains as people read them. Every error in this crate says only its own step and
//! object in its `Display` (`copying team/app@sha256:…`) and carries its cause as
//! `source()`; these functions walk the chain, so each cause is printed exactly once.

/// The error and its causes, outermost first.
pub fn causes(e: &dyn std::error::Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // An error that still embeds its cause's text would print it twice.
        if !out.last().is_some_and(|last| last.ends_with(&text)) {
            out.push(text);
        }
        source = cause.source();
    }
    out
}

/// Formats an error with its causes on one line: `a: b: c` (logs, DLQ attributes).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    causes(e).join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading blob sha256:ab")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("connection reset")]
    struct Inner;

    #[test]
    fn each_cause_appears_once_in_order() {
        let e = Outer(Inner);
        assert_eq!(
            causes(&e),
            vec!["reading blob sha256:ab", "connection reset"]
        );
        assert_eq!(error_chain(&e), "reading blob sha256:ab: connection reset");
    }
}
