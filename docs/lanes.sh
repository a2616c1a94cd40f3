# Two lanes of a study side by side, each a shell function, every line it prints tagged with the TAG before it:
#   run_lanes TAG1 FUNCTION1 TAG2 FUNCTION2
# returns after both have ended, with the first lane's failure status, else the second's, else 0 (a failing lane
# never stops the other, whose finished runs are kept). Sourced by the study scripts under docs/.
run_lanes() {
    local first second first_status=0 second_status=0
    "$2" > >(sed -u "s/^/[$1] /") 2>&1 &
    first=$!
    "$4" > >(sed -u "s/^/[$3] /") 2>&1 &
    second=$!
    wait "$first" || first_status=$?
    wait "$second" || second_status=$?
    return $((first_status ? first_status : second_status))
}
