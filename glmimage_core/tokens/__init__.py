"""Token grids: extracting the prior, token files and folders, the false-colour preview."""
