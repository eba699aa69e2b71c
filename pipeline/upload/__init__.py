"""Audiences from people: the upload page (streamed multipart, token, check and cost estimate as a
dry run of preparation) and the drop folder that turns each upload into a campaign run.

Uses every stage up to the estimate; hands the audience and its spec to the campaign flow
through audiences/inbox/.
"""
