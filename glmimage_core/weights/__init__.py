"""Weight files and formats: where each part's weights come from and how they are stored."""
