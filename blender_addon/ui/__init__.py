"""The add-on's UI: operators, the sidebar's panels and settings, the preferences, the previews' operators."""
