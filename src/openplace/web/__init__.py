"""The web page (``static/``) and the headers it is served with."""
