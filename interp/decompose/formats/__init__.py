"""Other libraries' file formats: SAELens export."""
