"""concordctl, the command line (click)."""
