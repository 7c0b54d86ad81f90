//! The sender check itself, shared by this crate's component and the
//! combined `stock` component (which includes this file).

use crate::mailwit::policy::host;
use crate::mailwit::policy::types::{MailParams, Reply};

/// The rules this function reads, read once per instance: an instance never
/// sees two versions of the tenant's rules, and a warm one serves many calls.
struct Rules {
    max_size: Option<u64>,
    max_per_second: Option<u64>,
    max_per_day: Option<u64>,
    allow_null: bool,
}

fn rules() -> &'static Rules {
    static RULES: std::sync::OnceLock<Rules> = std::sync::OnceLock::new();
    RULES.get_or_init(|| Rules {
        max_size: host::rule("message.max-size").and_then(|m| m.parse().ok()),
        max_per_second: host::rule("usage.max-per-second").and_then(|m| m.parse().ok()),
        max_per_day: host::rule("usage.max-per-day").and_then(|m| m.parse().ok()),
        allow_null: host::rule("senders.allow-null").as_deref() == Some("true"),
    })
}

fn refuse(code: u16, status: &str, text: &str) -> Reply {
    Reply {
        code,
        status: status.into(),
        text: text.into(),
    }
}

pub fn check_sender(sender: &str, params: MailParams) -> Result<(), Reply> {
    let rules = rules();
    if (rules.max_per_second.is_some() || rules.max_per_day.is_some())
        && let Some(used) = host::current_usage()
    {
        let over = |max: Option<u64>, n: u64| max.is_some_and(|max| n > max);
        if over(rules.max_per_second, used.messages_this_second)
            || over(rules.max_per_day, used.messages_today)
        {
            host::log(host::Level::Info, "over the account's own sending rate");
            return Err(refuse(
                451,
                "4.7.1",
                "Sending rate of this account exceeded (its own rule), try again later",
            ));
        }
    }
    if let (Some(size), Some(max)) = (params.size, rules.max_size)
        && size > max
    {
        return Err(refuse(
            552,
            "5.3.4",
            "Message size exceeds the account's limit",
        ));
    }
    if sender.is_empty() {
        return if rules.allow_null {
            Ok(())
        } else {
            Err(refuse(
                550,
                "5.7.1",
                "Null sender not allowed for this account",
            ))
        };
    }
    if crate::senders::registered(sender) {
        Ok(())
    } else {
        Err(refuse(
            550,
            "5.7.1",
            "Sender address not allowed: use a registered sender or a verified domain",
        ))
    }
}
