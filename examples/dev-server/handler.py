def respond(path):
    return f"hello from the handler, you asked for {path}\n"
