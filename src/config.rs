//! What the services' configurations share: [`Problem`], one invalid setting, as each service's
//! `Config::validate()` reports them (all at once, so a person fixes every mistake in one go).

/// One invalid setting of a service's `Config`: which field, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The `Config` field, e.g. `rate_limit_burst` (the CLI names its flag instead).
    pub setting: &'static str,
    /// What is wrong and what was expected, for a person.
    pub message: String,
}

impl Problem {
    pub fn new(setting: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            setting,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

/// `Ok` without problems, else an error naming every problem of `service`'s configuration.
pub fn check(service: &str, problems: Vec<Problem>) -> anyhow::Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    anyhow::bail!("invalid {service} configuration:\n  {}", lines.join("\n  "))
}
