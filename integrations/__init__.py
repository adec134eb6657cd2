"""Optional integrations of yap-bus with other frameworks; each brings its own extra."""
