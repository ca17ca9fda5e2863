"""Team chat and favourite teams."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import validation as v
from .errors import (
    PermissionDenied,
    shown,
)
from .events import (
    ChatMessagePosted,
)
from .model import (
    ChatMessage,
    Rep,
    Team,
)

if TYPE_CHECKING:
    from .state import State


def member(st: State, rep: Rep, team_id: str) -> Team:
    team = st.team(team_id)
    if rep.id not in team.members:
        raise PermissionDenied(f"rep {shown(rep.id)} is not a member of team {shown(team_id)}")
    return team


def set_favourite(st: State, rep_id: str, team_id: str, starred: bool) -> None:
    rep = st.rep(rep_id)
    v.flag("starred", starred)
    member(st, rep, team_id)
    rep.favourites = rep.favourites | {team_id} if starred else rep.favourites - {team_id}


def post_chat(st: State, rep_id: str, team_id: str, text: str) -> ChatMessage:
    c = v.Checks()
    c(v.ident, "rep_id", rep_id)
    c(v.ident, "team_id", team_id)
    c(v.text, "text", text, max_len=v.MAX_TEXT_LEN, required=True)
    c.done()
    rep = st.rep(rep_id)
    team = member(st, rep, team_id)
    team.chat_seq += 1
    msg = ChatMessage(team.chat_seq, rep.id, text, st.now)
    team.chat.append(msg)
    del team.chat[: -st.config.chat_history]
    rep.chat_read[team_id] = team.chat_seq
    st.emit(ChatMessagePosted(st.now, team_id, msg.seq, rep.id, text))
    return msg


def mark_chat_read(st: State, rep_id: str, team_id: str) -> None:
    rep = st.rep(rep_id)
    team = member(st, rep, team_id)
    rep.chat_read[team_id] = team.chat_seq


def chat_messages(
    st: State, rep_id: str, team_id: str, after_seq: int = 0, limit: int = 100
) -> list[ChatMessage]:
    rep = st.rep(rep_id)
    team = member(st, rep, team_id)
    v.integer("after_seq", after_seq, 0, 2**62)
    v.integer("limit", limit, 1, 1000)
    return [m for m in team.chat if m.seq > after_seq][:limit]
