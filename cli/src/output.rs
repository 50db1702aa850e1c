//! The command's output on stdout, written so that a reader that stops early
//! (`ecr-backup ls | head -1`) ends the command quietly, as it ends `ls` or `grep`.
//!
//! Rust ignores `SIGPIPE`, so a write to a closed pipe fails with `EPIPE`, and
//! `println!` panics on it. Restoring the signal's default would also let a credential
//! helper that exits before reading its stdin kill the whole process without a word, so
//! instead every line of output goes through [`line`], which treats a closed stdout as
//! the end of the command's work: nothing is left to say to anyone.

use std::io::{ErrorKind, Write};

/// Prints a line on stdout like `println!`, ending the process quietly (exit 0) when
/// stdout is a pipe whose reader has gone.
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

/// Writes one line (see [`outln!`]).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let result = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"));
    match result {
        Ok(()) => {}
        // The reader has what it wanted; whatever else this command would print has no
        // one to read it. Work already done (a backup's records) is committed by then:
        // output comes after it.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: writing to standard output: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every line of output goes through `outln!`: a `println!` would panic on a closed
    /// pipe again.
    #[test]
    fn no_command_prints_with_println() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("output.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for (n, l) in text.lines().enumerate() {
                        let code = l.split("//").next().unwrap_or("");
                        if code.contains("println!(") && !code.contains("eprintln!(")
                            || code.contains(" print!(")
                        {
                            offenders.push(format!("{}:{}", path.display(), n + 1));
                        }
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "use outln! instead: {offenders:#?}");
    }
}
