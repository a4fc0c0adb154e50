"""A session's life after the archive has it: ending the sessions whose candidate left (the disconnect sweep),
re-queueing finalizes that were lost, and deleting what is past retention. Kept apart from the archive's merge
and finalize (archiver/), as a recorder's cleanup lives apart from the recorder; `proctor worker --roles sweep`
runs it.
"""
