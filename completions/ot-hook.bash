
_ot_hook_completion() {
    local IFS=$'
'
    COMPREPLY=( $( env COMP_WORDS="${COMP_WORDS[*]}" \
                   COMP_CWORD=$COMP_CWORD \
                   _OT_HOOK_COMPLETE=complete_bash $1 ) )
    return 0
}

complete -o default -F _ot_hook_completion ot-hook

