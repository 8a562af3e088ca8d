//! `format=flowed` text (RFC 3676): soft line breaks undone before a reply is read.

/// The text of a `format=flowed` body as its writer typed it: a line that ends in a space is
/// continued by the next one at the same quote depth (with `DelSp=yes` that space was added by
/// the client and is removed); space-stuffing is undone; the `-- ` signature line stays as it is.
/// Quoted lines come out as `>` marks, one per level, and a space.
pub(super) fn unflow(text: &str, delsp: bool) -> String {
    let mut out: Vec<String> = Vec::new();
    // The paragraph being joined: its quote depth and text so far.
    let mut open: Option<(usize, String)> = None;
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let depth = raw.chars().take_while(|&c| c == '>').count();
        let mut line = &raw[depth..];
        line = line.strip_prefix(' ').unwrap_or(line);
        let signature = line == "-- ";
        let flowed = !signature && line.ends_with(' ');
        let content = if flowed && delsp {
            &line[..line.len() - 1]
        } else {
            line
        };
        let mut para = match open.take() {
            Some((d, text)) if d == depth => text,
            Some((d, text)) => {
                out.push(quoted(d, &text));
                String::new()
            }
            None => String::new(),
        };
        para.push_str(content);
        if flowed {
            open = Some((depth, para));
        } else {
            out.push(quoted(depth, &para));
        }
    }
    if let Some((d, text)) = open {
        out.push(quoted(d, &text));
    }
    out.join("\n")
}

fn quoted(depth: usize, text: &str) -> String {
    if depth == 0 {
        text.to_string()
    } else {
        format!("{} {text}", ">".repeat(depth))
    }
}

#[cfg(test)]
mod tests {
    use super::unflow;

    #[test]
    fn soft_breaks_are_joined_and_hard_ones_kept() {
        let text =
            "総合評価: 良好\r\n課題: ベンダーとの調整が \r\n続いています。\r\n\r\n-- \r\n山田";
        assert_eq!(
            unflow(text, false),
            "総合評価: 良好\n課題: ベンダーとの調整が 続いています。\n\n-- \n山田"
        );
    }

    #[test]
    fn delsp_removes_the_added_space_and_quotes_join_per_depth() {
        let text = "課題: ベンダーとの調整が続 \r\nいています。\r\n> 総合評価: \r\n> (良好/注意)\r\n>> old \r\n>> text\r\n \r\nnew";
        assert_eq!(
            unflow(text, true),
            "課題: ベンダーとの調整が続いています。\n> 総合評価:(良好/注意)\n>> oldtext\n\nnew"
        );
    }
}
