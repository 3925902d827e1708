"""Push notifications and their impact on product activity (PostHog)."""
