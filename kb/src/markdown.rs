//! Markdown to safe HTML: `pulldown-cmark` renders, `ammonia` sanitizes (no scripts, no
//! event handlers, no `javascript:` URLs), and plain text for the search index.

use pulldown_cmark::{html, Event, Options, Parser, Tag, TagEnd};

fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS
}

/// Renders Markdown to sanitized HTML.
pub fn render(markdown: &str) -> String {
    let mut raw = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut raw, Parser::new_ext(markdown, options()));
    ammonia::Builder::default().link_rel(Some("noopener noreferrer nofollow")).clean(&raw).to_string()
}

/// The text of a Markdown document without markup (for indexing and snippets).
pub fn plain_text(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    for ev in Parser::new_ext(markdown, options()) {
        match ev {
            Event::Text(t) | Event::Code(t) => out.push_str(&t),
            Event::SoftBreak | Event::HardBreak | Event::Rule => out.push(' '),
            Event::End(TagEnd::Paragraph | TagEnd::Heading(_) | TagEnd::Item | TagEnd::CodeBlock | TagEnd::TableCell) => out.push(' '),
            Event::Start(Tag::Item) => out.push(' '),
            // Raw HTML in the source is not text a reader sees.
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Marks the search backends wrap matches in: control characters that never occur in
/// article text (stripped on write), turned into `<mark>` after escaping.
pub const HIT_START: &str = "\u{1}";
/// End of a match.
pub const HIT_END: &str = "\u{2}";

/// Escapes a highlighted snippet and turns the match markers into `<mark>` elements.
pub fn snippet_html(highlighted: &str) -> String {
    let mut out = String::with_capacity(highlighted.len() + 32);
    let mut open = false;
    for c in highlighted.chars() {
        match c {
            '\u{1}' if !open => {
                out.push_str("<mark>");
                open = true;
            }
            '\u{2}' if open => {
                out.push_str("</mark>");
                open = false;
            }
            '\u{1}' | '\u{2}' => {}
            c => out.push_str(&escape_html(&c.to_string())),
        }
    }
    if open {
        out.push_str("</mark>");
    }
    out
}

/// Removes control characters (except tab and newlines) from user text.
pub fn strip_controls(s: &str) -> String {
    s.chars().filter(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t')).collect()
}

/// Shortens text to about `max` characters on a word boundary.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    let cut = match cut.rfind(' ') {
        Some(i) if i > max / 2 => cut[..i].to_string(),
        _ => cut,
    };
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_removed() {
        let h = render("# Hi\n<script>alert(1)</script>\n[x](javascript:alert(1)) <img src=x onerror=alert(1)>");
        assert!(h.contains("<h1>Hi</h1>"));
        assert!(!h.contains("<script"));
        assert!(!h.contains("javascript:"));
        assert!(!h.contains("onerror"));
    }

    #[test]
    fn snippets_escape_text_but_keep_marks() {
        assert_eq!(snippet_html("a <b> \u{1}reset\u{2} &"), "a &lt;b&gt; <mark>reset</mark> &amp;");
        assert_eq!(plain_text("# Title\n\nSome *bold* text.\n\n- a\n- b"), "Title Some bold text. a b");
    }
}
