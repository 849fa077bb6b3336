//! Aligned text tables for command output (columns separated by at least two spaces, so
//! `split_whitespace` parses them as long as cells have no spaces).

/// Formats `rows` (the first is the header) with every column padded to its widest cell.
pub fn format(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let rows = vec![
            vec!["NAME".to_string(), "IP".to_string()],
            vec!["a-long-name".to_string(), "10.244.1.2".to_string()],
        ];
        assert_eq!(format(&rows), "NAME         IP\na-long-name  10.244.1.2\n");
    }
}
