"""The application: the answer pipeline, the generator backends, the chat page and the ``kb`` command.

    app.answer       one question: condense, retrieve, check, write, verify, correct, log
    app.generators   one module per model backend behind one protocol
    app.web          the chat page (Gradio wiring, a controller that imports no gradio, rendering)
    app.kb           the ``kb`` command and ``build_services(settings)``, the composition root
"""
