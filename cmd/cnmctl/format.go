package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"text/template"
	"unicode"
)

// templateFuncs are the functions docker's --format templates know.
var templateFuncs = template.FuncMap{
	"json": func(v any) (string, error) {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			return "", err
		}
		return strings.TrimSpace(b.String()), nil
	},
	"join":  strings.Join,
	"split": strings.Split,
	"lower": strings.ToLower,
	"upper": strings.ToUpper,
	"title": func(s string) string {
		r := []rune(s)
		if len(r) > 0 {
			r[0] = unicode.ToUpper(r[0])
		}
		return string(r)
	},
	"println": func(a ...any) string { return fmt.Sprintln(a...) },
	"pad": func(s string, before, after int) string {
		return strings.Repeat(" ", before) + s + strings.Repeat(" ", after)
	},
	"truncate": func(s string, n int) string {
		if len(s) > n {
			return s[:n]
		}
		return s
	},
}

// parseFormat parses a --format template. "table ..." prints a header row (the fields' names)
// and aligns columns, as docker does; "json" prints each value as JSON on a line.
func parseFormat(format string) (tmpl *template.Template, table bool, err error) {
	switch {
	case format == "json":
		format = "{{json .}}"
	case strings.HasPrefix(format, "table "):
		format, table = strings.TrimPrefix(format, "table "), true
	}
	format = strings.NewReplacer(`\t`, "\t", `\n`, "\n").Replace(format)
	tmpl, err = template.New("format").Funcs(templateFuncs).Parse(format)
	if err != nil {
		return nil, false, fmt.Errorf("--format: %w", err)
	}
	return tmpl, table, nil
}

// printFormatted executes tmpl for each item, a line each. With table, the template is first
// executed on header (the column titles by field name, as docker prints them) and columns
// are aligned.
func printFormatted[T any](out io.Writer, tmpl *template.Template, table bool, header map[string]string, items []T) error {
	w := out
	var tw *tabwriter.Writer
	if table {
		tw = tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
		w = tw
		var b bytes.Buffer
		if err := tmpl.Execute(&b, header); err == nil {
			fmt.Fprintln(w, strings.TrimSuffix(b.String(), "\n"))
		}
	}
	for _, it := range items {
		var b bytes.Buffer
		if err := tmpl.Execute(&b, it); err != nil {
			return fmt.Errorf("--format: %w", err)
		}
		fmt.Fprintln(w, strings.TrimSuffix(b.String(), "\n"))
	}
	if tw != nil {
		return tw.Flush()
	}
	return nil
}

// printJSON prints v indented, as docker inspect does.
func printJSON(out io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s\n", b)
	return err
}
