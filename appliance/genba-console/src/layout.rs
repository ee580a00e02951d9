//! The page shell every console page shares: head, navigation, banners, assets.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::i18n::{tr, Lang};

pub const CSS: &str = include_str!("../assets/console.css");
pub const JS: &str = include_str!("../assets/console.js");

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Alarms,
    Haccp,
    Delivery,
    Firmware,
    Send,
    None,
}

/// Who is looking (for the header and what the page offers).
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user: Option<String>,
    pub role: Role,
    pub csrf: String,
    pub lang: Lang,
    /// No login is configured (the trial on loopback): say so on every page.
    pub open: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    /// May acknowledge alarms and send commands.
    Operator,
    /// May also edit devices.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// A message shown at the top of a page.
pub enum Flash {
    Ok(String),
    Error(String),
}

pub fn csrf_field(v: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.csrf); }
}

pub fn page(v: &Viewer, nav: Nav, title: &str, flash: Option<Flash>, body: Markup) -> Markup {
    let l = v.lang;
    let item = |target: Nav, href: &str, text: &'static str| {
        html! {
            @if target == nav { a href=(href) aria-current="page" { (tr(l, text)) } }
            @else { a href=(href) { (tr(l, text)) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang=(l.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                title { (title) " · Genba" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                header {
                    a.brand href="/" { "Genba 現場" }
                    nav aria-label="main" {
                        (item(Nav::Overview, "/", "Overview"))
                        " " (item(Nav::Alarms, "/alarms", "Alarms"))
                        " " (item(Nav::Haccp, "/haccp", "HACCP record"))
                        " " (item(Nav::Delivery, "/delivery", "Delivery"))
                        " " (item(Nav::Firmware, "/firmware", "Firmware"))
                        " " (item(Nav::Send, "/send", "Send"))
                    }
                    div.right {
                        a href={ "?lang=" (l.other().code()) } lang=(l.other().code()) {
                            @if l == Lang::En { "日本語" } @else { "English" }
                        }
                        @if let Some(u) = &v.user {
                            span { (u) " (" (v.role.name()) ")" }
                            form method="post" action="/logout" {
                                (csrf_field(v))
                                button type="submit" { (tr(l, "Log out")) }
                            }
                        }
                    }
                }
                main {
                    @if v.open {
                        p.banner role="note" { (tr(l, "No login is configured: anyone who reaches this page can use it.")) }
                    }
                    @match flash {
                        Some(Flash::Ok(m)) => { p.banner.ok role="status" { (m) } }
                        Some(Flash::Error(m)) => { p.banner.error role="alert" { (m) } }
                        None => {}
                    }
                    h1 { (title) }
                    (body)
                }
                script src="/assets/console.js" defer {}
            }
        }
    }
}

/// The login page (no navigation).
pub fn login(lang: Lang, error: Option<&str>, next: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                title { (tr(lang, "Log in")) " · Genba" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                main style="max-width:24rem" {
                    h1 { "Genba 現場" }
                    @if let Some(e) = error { p.banner.error role="alert" { (e) } }
                    form.stack method="post" action="/login" {
                        input type="hidden" name="next" value=(next);
                        label for="user" { (tr(lang, "User")) }
                        input #user name="user" autocomplete="username" required autofocus;
                        label for="password" { (tr(lang, "Password")) }
                        input #password name="password" type="password" autocomplete="current-password" required;
                        button type="submit" { (tr(lang, "Log in")) }
                    }
                    p { a href={ "/login?lang=" (lang.other().code()) } { @if lang == Lang::En { "日本語" } @else { "English" } } }
                }
            }
        }
    }
}

/// Milliseconds ago as "3 min ago" / "3分前".
pub fn ago(lang: Lang, now_ms: i64, at_ms: Option<i64>) -> String {
    let Some(at) = at_ms else {
        return tr(lang, "never").to_owned();
    };
    let s = ((now_ms - at) / 1000).max(0);
    let t = if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{} min", s / 60)
    } else if s < 86_400 {
        format!("{} h", s / 3600)
    } else {
        format!("{} d", s / 86_400)
    };
    match lang {
        Lang::En => format!("{t} ago"),
        Lang::Ja => format!("{t}前"),
    }
}

/// A local wall time for tables (the appliance's time zone).
pub fn local_time(ms: i64) -> String {
    use chrono::TimeZone;
    chrono::Local
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// Raw HTML that is known to be safe (our own SVG).
pub fn raw(s: String) -> PreEscaped<String> {
    PreEscaped(s)
}
