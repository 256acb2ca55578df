"""ssae.runtime: backends and the Editor pipeline (image -> masks -> codes -> edit -> refine -> image)."""
