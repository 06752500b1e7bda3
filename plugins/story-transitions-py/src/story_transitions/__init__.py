"""story-transitions: on each `planning.story.transitioned` event, invalidate
the story's cached context and record the transition as a PhaseTransition
node. transition.py parses, keys.py names the keys, handler.py runs the
effects against a host; ../app.py joins it to the component's imports."""
