"""What an estimate becomes for people: the JSON payload, terminal table, Markdown, CSV and SVG charts."""
