"""Prompts for the visual student, the text-only student, the privileged teacher and perception."""

from mgsd.prompts.templates import (
    answer_facts,
    perception_prompt,
    perception_target,
    reference_response,
    student_prompt,
    teacher_context,
    teacher_system,
    text_student_prompt,
)

__all__ = [
    "answer_facts",
    "perception_prompt",
    "perception_target",
    "reference_response",
    "student_prompt",
    "teacher_context",
    "teacher_system",
    "text_student_prompt",
]
