"""One module per view: `layout()` (static components) and pure `render_*` functions that turn a
cached AttentionResult into figures and components. Callbacks (visapp/callbacks.py) stay thin."""
