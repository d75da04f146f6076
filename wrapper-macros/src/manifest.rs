//! Where the runtime crate is when the user's `Cargo.toml` renames it
//! (`mw = { package = "map-wrapper", … }`): the generated code names `::mw` instead of
//! `::map_wrapper`, as the `proc-macro-crate` crate does for other macros, so a renamed
//! dependency works without `crate = "…"`. A path given with `crate = "…"` always wins.
//!
//! The manifest is read with a line scanner, not a TOML parser: it recognises the two ways a
//! dependency is renamed (an inline table with `package = "map-wrapper"`, and a
//! `[dependencies.name]` table with that line); anything else leaves the default path.

/// The package name of the runtime crate.
const PACKAGE: &str = "map-wrapper";

/// The name under which the crate being compiled depends on `map-wrapper`, when its manifest
/// renames the dependency; `None` when it does not (or the manifest cannot be read).
pub(crate) fn renamed_runtime() -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let text = std::fs::read_to_string(std::path::Path::new(&dir).join("Cargo.toml")).ok()?;
    renamed_in(&text)
}

/// [`renamed_runtime`] for the text of a manifest: the renamed dependency's name, as a crate
/// name (`-` as `_`).
pub(crate) fn renamed_in(manifest: &str) -> Option<String> {
    let mut table: Option<String> = None; // `[dependencies.name]`: its name
    let mut in_deps = false;
    let package_line = |line: &str| {
        let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        compact.contains(&format!("package=\"{PACKAGE}\""))
    };
    for raw in manifest.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            let header = line.trim_matches(|c| c == '[' || c == ']').trim();
            let (section, name) = match header.rsplit_once("dependencies.") {
                Some((_, name)) => ("dependencies", Some(name)),
                None => (header, None),
            };
            in_deps = section.ends_with("dependencies");
            table = name.map(|n| n.trim_matches('"').to_string());
            continue;
        }
        if !in_deps || !package_line(line) {
            continue;
        }
        let name = match &table {
            Some(name) => name.clone(),
            None => line.split_once('=')?.0.trim().trim_matches('"').to_string(),
        };
        if name.replace('-', "_") != "map_wrapper" {
            return Some(name.replace('-', "_"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::renamed_in;

    #[test]
    fn an_inline_rename_is_found() {
        let m = "[package]\nname = \"app\"\n\n[dependencies]\nserde = \"1\"\nmw = { package = \"map-wrapper\", version = \"0.1\" }\n";
        assert_eq!(renamed_in(m).as_deref(), Some("mw"));
    }

    #[test]
    fn a_table_rename_and_a_dash_are_found() {
        let m = "[dev-dependencies.guarded-maps]\nversion = \"0.1\"\npackage = \"map-wrapper\"\n";
        assert_eq!(renamed_in(m).as_deref(), Some("guarded_maps"));
        let target = "[target.'cfg(unix)'.dependencies]\nmw2 = {package=\"map-wrapper\"}\n";
        assert_eq!(renamed_in(target).as_deref(), Some("mw2"));
    }

    #[test]
    fn no_rename_keeps_the_default() {
        assert_eq!(renamed_in("[dependencies]\nmap-wrapper = \"0.1\"\n"), None);
        assert_eq!(renamed_in("[dependencies]\nmap-wrapper = { path = \"../wrapper\" }\n"), None);
        assert_eq!(renamed_in("[package]\nname = \"x\" # package = \"map-wrapper\"\n"), None);
        assert_eq!(renamed_in("[features]\nx = []\nmw = { package = \"map-wrapper\" }\n"), None);
    }
}
