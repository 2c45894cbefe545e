"""The studio: a Gradio Blocks app over the engine (`app`), one module per tab (`tabs/`), the
per-session workspaces (`workspace`) and the widgets and plots the tabs share (`common`, `plots`).

The only room of tuner that imports gradio."""
