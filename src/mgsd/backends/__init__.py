"""Where responses come from: the ``Backend`` protocol and its query, reply and generation types
(``base``), a local model (``local``), an OpenAI-compatible API (``openai_compat``), the factory that
opens one by name (``factory``) and ``mgsd serve``, a local model behind an OpenAI-compatible endpoint
(``serve``, built on the local backend). Below eval, train, report, the pipeline and the CLI: nothing
here imports them."""
