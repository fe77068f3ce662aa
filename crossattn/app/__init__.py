"""The Gradio demo: type a prompt, see where each word went, scrub through denoising, check the layout; ask
what a word did (What if), repair a neglected object, and explain an image the user brings.

    crossattn demo                       # http://127.0.0.1:7860, embedded models only
    crossattn demo --allow-any-model     # also a hub id or server folder typed in the page

Sections, top to bottom: the inputs and the image; display and filters; the words (one heat map each, click
to select); who owns each pixel and where each object landed; time (the selected word per step); the model
view (the selected word per layer and head, with "Keep every layer and head"); downloads (one zip, written
only when asked for). Every view is drawn from the maps kept for the browser session (a gr.State), so any
display or filter change redraws every view without generating again.

Videos: with a video model (the embedded "shapes-video", or one typed in) a "Frames" field says how many frames to
make, and a frame slider among the filters picks which frame of the maps every view shows: each frame is drawn as an
image (its maps over the first decoded frame they cover), beside the whole video as a GIF. The session keeps every
frame; the zip adds the video, each shown word's map over it and a frames × words grid. What if and Repair compare
images: they are refused for a video.

Serving: generations run one at a time (one shared pipeline per model, whose processors a trace swaps while
it runs: ``concurrency_limit=1`` plus a lock per pipeline) and only within limits the device can serve in
reasonable time (`limits_for`); Gradio's queue shows each waiting user their place and holds at most
`QUEUE_SIZE` requests (more are refused at once, not left waiting for minutes). A running generation stops
between two steps when its user presses Stop or goes away; the page then says so and which prompt the views
still show. Redrawing needs no pipeline and runs up to 4 at once.

Memory: a browser session keeps one generation (a gr.State, dropped after `SESSION_TTL_S` idle); Gradio keeps
per-session copies of updated controls for at most `SESSIONS` sessions; pipelines typed in with
``--allow-any-model`` are kept for the `EXTRA_MODELS` most recently used (the offered models stay loaded).

Errors: bad input is checked before anything runs (Gradio's `validator`) and its message is shown under the
field it is about, where it stays until that field is edited; every panel keeps its last good content. Through
the API the same checks answer with the field and the message. Anything else shows a generic message in the
page and its traceback once in the server log; the app keeps serving.

Security: binds 127.0.0.1 unless told otherwise; never shares publicly unless asked; loads only the models
offered unless started with ``--allow-any-model`` (and then tells a remote user nothing about which server
paths exist); serves only files it wrote itself; accepts no upload over `MAX_UPLOAD` (the Explain tab's image).

Modules: `limits` (models and request limits), `guard` (errors, stopping), `store` (a session's files), `checks`
(input checks), `views` (pictures and tables, no Gradio), `video` (a video's controls), `page` (the generation
page), `whatif` (What if, Repair), `explaining` (the Explain tab), `server` (launch). None imports the CLI.
"""

from .guard import INTERNAL_ERROR
from .limits import EXTRA_MODELS, QUEUE_SIZE, Models
from .server import build_app, launch
from .views import notes_text, titled_map

__all__ = ["EXTRA_MODELS", "INTERNAL_ERROR", "QUEUE_SIZE", "Models", "build_app", "launch", "notes_text", "titled_map"]
