//! Which in-VM tests to run, from the arguments `cargo test -- <args>`
//! hands every test binary, read as libtest reads them.

/// Which tests the ignored flags ask for. In-VM tests have no `#[ignore]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ignored {
    /// Tests not marked ignored: all in-VM tests.
    #[default]
    Skip,
    /// `--ignored`: only ignored tests, so no in-VM test.
    Only,
    /// `--include-ignored`: all tests.
    Include,
}

/// The test selection and listing flags of libtest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Positional filters: a test runs if its name matches any of them.
    pub filters: Vec<String>,
    /// `--skip`: a test whose name matches any of these does not run.
    pub skips: Vec<String>,
    /// `--exact`: filters and skips match whole names, not substrings.
    pub exact: bool,
    /// `--list`: print the tests instead of running them.
    pub list: bool,
    /// `--ignored` / `--include-ignored`.
    pub ignored: Ignored,
}

/// Flags that change only how libtest prints or schedules, taking no value.
const NO_EFFECT: &[&str] = &["--nocapture", "--show-output", "--quiet", "-q"];
/// Flags of that kind taking a value (`--flag v` or `--flag=v`).
const NO_EFFECT_VALUE: &[&str] = &["--test-threads", "--color"];

impl Selection {
    /// Reads libtest's arguments (without the program name). Flags that
    /// would change what runs and that the in-VM runner does not support
    /// are refused with an error naming them.
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Self, String> {
        let mut sel = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = |flag: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("`{flag}` needs a value"))
            };
            match flag.as_str() {
                "--skip" => sel.skips.push(value("--skip")?),
                "--exact" => sel.exact = true,
                "--list" => sel.list = true,
                "--ignored" => sel.ignored = Ignored::Only,
                "--include-ignored" => sel.ignored = Ignored::Include,
                f if NO_EFFECT.contains(&f) && inline.is_none() => {}
                f if NO_EFFECT_VALUE.contains(&f) => {
                    value(f)?;
                }
                f if f.starts_with('-') => {
                    return Err(format!(
                        "unsupported test flag `{arg}`: the in-VM runner takes test-name \
                         filters, --skip NAME, --exact, --list, --ignored, --include-ignored \
                         (and ignores {} and {})",
                        NO_EFFECT.join(", "),
                        NO_EFFECT_VALUE.join(", ")
                    ))
                }
                _ => sel.filters.push(arg),
            }
        }
        Ok(sel)
    }

    fn matches(&self, pattern: &str, name: &str) -> bool {
        if self.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    }

    /// Whether the test `name` runs.
    pub fn selects(&self, name: &str) -> bool {
        self.ignored != Ignored::Only
            && (self.filters.is_empty() || self.filters.iter().any(|f| self.matches(f, name)))
            && !self.skips.iter().any(|s| self.matches(s, name))
    }

    /// Whether anything narrows the run (then selecting no test is fine,
    /// as it is for libtest).
    pub fn narrows(&self) -> bool {
        !self.filters.is_empty() || !self.skips.is_empty() || self.ignored == Ignored::Only
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(args: &[&str]) -> Result<Selection, String> {
        Selection::from_args(args.iter().map(|s| s.to_string()))
    }

    const NAMES: [&str; 4] = ["k::tsc", "k::tsc_rate", "k::heap", "k::frames"];

    fn picked(s: &Selection) -> Vec<&'static str> {
        NAMES.into_iter().filter(|n| s.selects(n)).collect()
    }

    #[test]
    fn skip_takes_its_value_and_is_not_a_filter() {
        let s = sel(&["--skip", "tsc"]).unwrap();
        assert_eq!(picked(&s), ["k::heap", "k::frames"]);
        let s = sel(&["--skip=tsc"]).unwrap();
        assert_eq!(picked(&s), ["k::heap", "k::frames"]);
    }

    #[test]
    fn exact_matches_whole_names_for_filters_and_skips() {
        assert_eq!(picked(&sel(&["k::tsc", "--exact"]).unwrap()), ["k::tsc"]);
        assert_eq!(
            picked(&sel(&["tsc", "--exact"]).unwrap()),
            Vec::<&str>::new()
        );
        let s = sel(&["tsc", "--skip", "k::tsc", "--exact", "k::tsc_rate"]).unwrap();
        assert_eq!(picked(&s), ["k::tsc_rate"]);
    }

    #[test]
    fn several_filters_select_the_union() {
        let s = sel(&["heap", "frames"]).unwrap();
        assert_eq!(picked(&s), ["k::heap", "k::frames"]);
        assert!(s.narrows());
    }

    #[test]
    fn ignored_selects_nothing_include_ignored_everything() {
        assert!(picked(&sel(&["--ignored"]).unwrap()).is_empty());
        assert_eq!(picked(&sel(&["--include-ignored"]).unwrap()).len(), 4);
    }

    #[test]
    fn list_and_harmless_flags_are_accepted() {
        let s = sel(&[
            "--list",
            "--nocapture",
            "--test-threads",
            "1",
            "--color=never",
        ])
        .unwrap();
        assert!(s.list);
        assert_eq!(picked(&s).len(), 4);
        assert!(!s.narrows());
    }

    #[test]
    fn unknown_or_valueless_flags_are_refused() {
        let e = sel(&["--bogus"]).unwrap_err();
        assert!(e.contains("--bogus"), "{e}");
        assert!(sel(&["--skip"]).unwrap_err().contains("needs a value"));
        assert!(sel(&["--format", "json"]).is_err());
    }
}
