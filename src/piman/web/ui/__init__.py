"""The web UI: server-rendered pages, no CDN, no third-party files."""
