//! The `ksctl` binary's help, walked through every command: each flag and argument says what it
//! is for, and the global connection flags are listed under their own heading instead of among
//! each command's own flags.
use ksctl_tests::bin;

fn help(path: &[&str]) -> String {
    let out = std::process::Command::new(bin("ksctl")).args(path).arg("--help").output().expect("run ksctl");
    assert!(out.status.success(), "ksctl {path:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The help's sections: heading (`Options`, `Commands`, …) → its entries, each the entry's first
/// line and whether it has a description (on that line or on the deeper-indented next one).
fn sections(text: &str) -> Vec<(String, Vec<(String, bool)>)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<(String, Vec<(String, bool)>)> = vec![];
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') && line.ends_with(':') {
            out.push((line.trim_end_matches(':').to_string(), vec![]));
            continue;
        }
        let Some((_, entries)) = out.last_mut() else { continue };
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        // Entries start at column 2 ("  -o, --output", "  cluster"), or 6 for a flag without a
        // short form ("      --name"); deeper lines are wrapped descriptions.
        if !(indent == 2 || (indent == 6 && trimmed.starts_with("--"))) || trimmed.is_empty() {
            continue;
        }
        // "  --name <NAME>   The cluster's name" — the description follows two or more spaces;
        // bracketed notes ([default: …], [env: …]) are not a description.
        let rest = trimmed.split_once("  ").map(|(_, r)| r.trim()).unwrap_or("");
        let mut described = !strip_notes(rest).is_empty();
        if !described && let Some(next) = lines.get(i + 1) {
            let t = next.trim_start();
            described = next.len() - t.len() > 2 && !strip_notes(t).is_empty();
        }
        entries.push((trimmed.to_string(), described));
    }
    out
}

fn strip_notes(s: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

#[test]
fn every_flag_and_argument_is_described_and_connection_flags_have_their_own_heading() {
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    let mut bare = vec![];
    let mut connection_flags = 0;
    while let Some(path) = todo.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        seen += 1;
        for (heading, entries) in sections(&text) {
            for (entry, described) in &entries {
                if heading == "Commands" {
                    let name = entry.split_whitespace().next().unwrap().to_string();
                    if name != "help" {
                        todo.push([path.clone(), vec![name]].concat());
                    }
                }
                if !described {
                    bare.push(format!("ksctl {} — {heading}: {entry}", path.join(" ")));
                }
                let is_connection = ["--nats-", "-o, --output"].iter().any(|p| entry.starts_with(p));
                connection_flags += usize::from(is_connection);
                assert_eq!(
                    is_connection,
                    heading == "Connection and output",
                    "ksctl {}: {entry:?} is under {heading:?}",
                    path.join(" ")
                );
            }
        }
    }
    assert!(seen >= 18, "walked only {seen} commands");
    // Seven --nats-* flags and -o in every command's help.
    assert_eq!(connection_flags, 8 * seen, "connection flags found {connection_flags} times in {seen} commands");
    assert!(bare.is_empty(), "flags and arguments without a description:\n{}", bare.join("\n"));
}

#[test]
fn create_shows_the_counts_it_defaults_to() {
    let text = help(&["cluster", "create"]);
    for (flag, default) in
        [("--control-planes", "3"), ("--datastores", "3"), ("--workers", "2"), ("--managed-nodes", "2")]
    {
        // The flag's line and its description (on the same line or the next).
        let lines: Vec<&str> = text.lines().collect();
        let at =
            lines.iter().position(|l| l.trim_start().starts_with(flag)).unwrap_or_else(|| panic!("{flag}: {text}"));
        let entry = lines[at..=at + 1].join(" ");
        assert!(entry.contains(&format!("[default: {default}]")), "{entry}");
    }
}
