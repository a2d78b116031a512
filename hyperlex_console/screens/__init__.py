"""The console's screens: the main screen with its panes, and the modal forms and cards."""
