//! The command a hint tells the user to run, written the way they started netc.

use super::*;

/// How the user started netc, for the commands the hints print: `netc` when that is what the
/// shell finds on the PATH, else the path the binary was started by (`target/release/netc`), as
/// a shell word. Hints from the library's diagnostics say `netc ...`; `with_invocation` fixes them.
pub fn invocation() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let argv0 = std::env::args_os().next().map(PathBuf::from);
        invocation_of(argv0.as_deref(), std::env::var_os("PATH").as_deref())
    })
}

/// `invocation` for a given `argv[0]` and `PATH`.
pub(super) fn invocation_of(argv0: Option<&Path>, path_var: Option<&std::ffi::OsStr>) -> String {
    let Some(argv0) = argv0.filter(|p| !p.as_os_str().is_empty()) else {
        return "netc".to_string();
    };
    // A bare name is what the shell looked up on the PATH.
    if argv0.components().count() == 1 && !argv0.has_root() {
        return shell_word(&argv0.to_string_lossy());
    }
    let on_path = path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("netc"))
        .find(|candidate| candidate.is_file());
    let same_file = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    match on_path {
        Some(found) if same_file(&found, argv0) => "netc".to_string(),
        _ => shell_word(&argv0.to_string_lossy()),
    }
}

/// `text` as one word for a POSIX shell: as it is when it needs no quoting, else single-quoted.
pub(super) fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Rewrites the commands quoted in rendered diagnostics (`` `netc run --resume DIR` ``) to start
/// the way netc was started, so they can be pasted as they are.
pub fn with_invocation(rendered: &str) -> String {
    match invocation() {
        "netc" => rendered.to_string(),
        name => rendered.replace("`netc ", &format!("`{name} ")),
    }
}

pub(super) fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_start_the_way_netc_was_started() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("netc"), "").unwrap();
        let other = tmp.path().join("target release");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("netc"), "").unwrap();
        let path_var = std::env::join_paths([&bin]).unwrap();
        let of = |argv0: &Path| invocation_of(Some(argv0), Some(&path_var));
        // Found on the PATH by the shell, or started by the path of what the PATH finds.
        assert_eq!(of(Path::new("netc")), "netc");
        assert_eq!(of(&bin.join("netc")), "netc");
        // Started by the path of another binary: that path, quoted for the shell.
        assert_eq!(
            of(&other.join("netc")),
            format!("'{}'", other.join("netc").display())
        );
        assert_eq!(
            invocation_of(Some(Path::new("target/release/netc")), None),
            "target/release/netc"
        );
        assert_eq!(invocation_of(None, None), "netc");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }
}
