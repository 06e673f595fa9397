"""notify: templates, preferences, notifications and their delivery over webhook, SMS and email."""
